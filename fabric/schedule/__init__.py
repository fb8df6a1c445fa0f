"""Pure scheduling decisions: the per-submission run state machine (admission policy comes later)."""

from fabric.schedule.run import Action, Attempt, Dispatch, Kill, NodeRun, RunMachine, Transition

__all__ = ["Action", "Attempt", "Dispatch", "Kill", "NodeRun", "RunMachine", "Transition"]
