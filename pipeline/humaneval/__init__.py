"""The humaneval stage's room: run a model's completions of the HumanEval problems, score pass@k.

    stage.py     the stage: its config, sampling the completions, scoring, the output files
    problems.py  the problems, how a completion becomes a program that checks it, pass@k
    sandbox.py   runs one model-written program, or many in parallel, without trusting it
    launcher.py  the sandbox's inside: builds the jail, runs and supervises the program,
                 and the Python guard (standard library only: it runs where nothing else is)

What the sandbox protects against, and what it does not, is in docs/eval.md.
"""
