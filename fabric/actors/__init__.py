"""Ray actors of the control plane, each a thin shell over plain objects."""
