"""Pure PyTorch RIM modules (no Stable-Baselines3 import): usable in any model."""

from rim_agents.nn.attention import CommunicationAttention, InputAttention
from rim_agents.nn.cell import RIMCell
from rim_agents.nn.rim import RIM

__all__ = ["RIM", "CommunicationAttention", "InputAttention", "RIMCell"]
