"""The embedded demo (`diffurl demo`, `make demo`): a tiny dLLM learns a generated task family with coupled-GRPO.

    tasks      the task family: Python function problems generated in code, split train / rl / held-out
    warmstart  the warm start: an in-repo BPE and a tiny model trained with the SFT loss, cached
    flow       the demo itself: warm start, eval before, RL through the whole system, eval after, report
"""
