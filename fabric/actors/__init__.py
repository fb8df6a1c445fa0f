"""Ray actors of the control plane, each a thin shell over plain objects."""

NAMESPACE = "fabric"
HEAD_RESOURCE = "node:__internal_head__"  # Ray gives it to the head node only
