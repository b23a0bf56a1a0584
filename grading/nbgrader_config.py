"""nbgrader configuration of the cbir_kit course (this folder is the nbgrader course directory).

Layout (nbgrader's own): ``source/<assignment>/<notebook>.ipynb`` holds the instructor versions,
``release/`` the generated student versions, ``submitted/``, ``autograded/``, ``feedback/`` the
grading stages, ``gradebook.db`` the grades.  The instructor notebooks live in ``../notebooks``
(``course.toml``: ``notebooks``); ``cbir grade release`` copies each into ``source/`` as one
assignment named after its file (``01_features.ipynb`` -> assignment ``01_features``) and then
generates the student versions, so nothing is copied by hand.

Every generated folder (source/, release/, gradebook.db, ...) is git-ignored: the notebooks in
``../notebooks`` are the only source of truth.
"""
import os

c = get_config()  # noqa: F821

c.CourseDirectory.root = os.path.dirname(os.path.abspath(__file__))
c.CourseDirectory.course_id = "cbir_kit"
# Solution regions become nbgrader's default Python stub, which raises until the exercise is
# written, so its visible tests fail on the unsolved notebook (tests/test_notebooks.py checks it).
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"
# A cell of the CI profile runs in seconds; on the real datasets feature extraction can take minutes.
c.Execute.timeout = 1800
