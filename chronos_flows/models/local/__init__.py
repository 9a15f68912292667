"""Local families: each series fitted on its own (Seasonal Naive, AutoETS, Theta, Prophet)."""
