"""rim_agents: Recurrent Independent Mechanisms for Stable-Baselines3's RecurrentPPO."""

from rim_agents.nn import RIM

__all__ = ["RIM"]
__version__ = "0.1.0"
