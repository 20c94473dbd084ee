"""Training: optimiser and losses, the train state, the pure step, its mesh setup, the loop and checkpoints.

Data flows config -> data -> model -> ``state`` -> ``step`` (built with its shardings by ``setup``) ->
``trainer`` (the loop, validation calls, ``checkpointing``). ``partitioning`` holds the mesh rules shared
with evaluation and the tools.
"""
