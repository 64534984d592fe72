"""Pure ops: ``y, cache = op_forward(...)`` and ``grads = op_backward(dy, cache)``.

One file per family; each op's backward sits a few lines below its forward.
"""
