"""Instructor grading: nbgrader autograding of the course notebooks and the retrieval challenge.

* :mod:`.nbgrade`      ``cbir grade release`` / ``cbir grade autograde`` around nbgrader;
* :mod:`.challenge`    ``cbir grade challenge``: hidden-split retrieval challenge, timed and scored;
* :mod:`.scoring`      the challenge config and score formula; :mod:`.leaderboard` its output files;
* :mod:`.local`        ``score_locally``: a student's submission and the baseline scored in-process;
* :mod:`.sandbox`      confinement of student code (bubblewrap + resource limits);
* ``confine.py`` / ``runner.py`` / :mod:`.kernel` run *inside* the sandbox.
"""
