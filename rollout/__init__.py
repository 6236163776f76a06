"""Rollouts of a model version: shadow, canary and A/B traffic through the gateway, judged
from the gateways' figures, promoted or rolled back automatically (see ``controller``)."""
