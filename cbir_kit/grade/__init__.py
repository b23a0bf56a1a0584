"""Instructor side: nbgrader autograding of the course notebooks and the retrieval challenge.

* :mod:`.nbgrade`      ``cbir grade release`` / ``cbir grade autograde`` around nbgrader;
* :mod:`.challenge`    ``cbir grade challenge``: hidden-split retrieval challenge, timed and scored;
* :mod:`.scoring`      the challenge config and score formula; :mod:`.leaderboard` its output files;
* :mod:`.local`        ``score_locally``: a student's submission and the baseline scored with the grader's protocol, unsandboxed;
* :mod:`.sandbox`      confinement of student code (bubblewrap + resource limits);
* :mod:`.isolate`      autograde's execution: instructor cells as written, only the student's definitions;
* :mod:`.guard`        inside the grading kernel: every call into student code checked, the tests out of reach;
* :mod:`.hidden` / :mod:`.feedback`  hidden tests' misconceptions, and feedback that names them;
* ``confine.py`` / ``runner.py`` / :mod:`.kernel` run *inside* the sandbox.
"""
