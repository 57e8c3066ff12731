"""The operator's commands, each a plain function `cli.py` calls with the parsed flags.

    submit   a training run as a Ray job on a cluster (`submit_command`)
    status   where a run stands, from its Redis and its run directory (`status_command`)
    scale    a live run's desired rollout / sandbox worker counts (`scale_command`)
    plot     a run's training curves to a PNG (`plot_command`)
    sandbox  score code samples in the sandbox, check its isolation (`score_command`, `check_command`)
"""
