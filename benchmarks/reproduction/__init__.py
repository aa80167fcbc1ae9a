"""The reproduction campaign's parts: the file format (:mod:`.spec`), the results kept in ``results/``
(:mod:`.results`), the statistics of a claim (:mod:`.stats`) and the generated page (:mod:`.report`); the command is
:mod:`benchmarks.reproduce`."""
