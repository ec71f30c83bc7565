"""RotorQuant formats in Python: the tables (generated) and a numpy reference codec."""
