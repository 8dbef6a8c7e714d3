"""Pure-Python references of the compiled data plane, used by the tests as oracles.

Each module here follows its specification in docs/ literally and plainly, with
no speed tricks, so that a reader can check it against the text line by line.
"""
