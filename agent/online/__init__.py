"""`smar online`: continual updates from live feedback, gated on held-out evidence, under drift.

config       OnlineConfig: every setting, the update / gate / held-out / drift configs nested
loop         the rounds (traffic -> logs -> update -> gate -> publish -> held-out), state and resume
app          the exploring endpoint the loop drives (initial policy, Ray, deploy)
report       the run's verdicts, one line per round, the plot
cli          `smar online` (options derived from OnlineConfig) and the offline re-evaluation
heldout      the serving version's reward on held-out sessions no round trains on
drift        a changing simulated population (`--online.drift`)
gate_suite   the gate's false- and true-publish rates on candidates of known value
diagnose     what the update learns from simulated logs (propensities, a known answer, drift)
drift_ceiling  what any ranker could regain after a drift (oracle offsets, a refit, the true grades)
across_runs  drift recovery and last-vs-initial checks as means over several runs (seeds)
traffic_bench  simulated-traffic throughput, one page per request vs batched
"""

from agent.online.config import OnlineConfig
from agent.online.loop import OnlineLoop
from agent.online.report import plot_rounds

__all__ = ["OnlineConfig", "OnlineLoop", "plot_rounds"]
