"""Stage 7, report: tables, the Markdown report, plots and the explorer widget (notebooks 02 and 03).

Tables and the Markdown report (:mod:`.document`), plots (:mod:`.plots`),
the search benchmark's page (:mod:`.search_bench`), the notebook explorer widget
(:mod:`.explorer`) and the instructor's page of a class's grades (:mod:`.grades`); taught from notebook 02 on."""
