"""`smar online`: continual updates from live feedback, gated on held-out evidence, under drift.

loop        the rounds (traffic -> logs -> update -> gate -> publish) and the CLI
heldout     the serving version's reward on held-out sessions no round trains on
drift       a changing simulated population (`--drift SPEC`)
gate_suite  the gate's false- and true-publish rates on candidates of known value
"""

from agent.online.loop import (
    OnlineConfig,
    OnlineLoop,
    add_arguments,
    evaluate_versions,
    plot_rounds,
    run,
)

__all__ = ["OnlineConfig", "OnlineLoop", "add_arguments", "evaluate_versions", "plot_rounds", "run"]
