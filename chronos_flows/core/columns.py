"""The column names of the canonical long frame every part of the system passes around:
``unique_id`` (str), ``ds`` (timestamps), ``y`` (float)."""

ID, TIME, TARGET = "unique_id", "ds", "y"
