"""Trace records, Chrome/Perfetto export, reports and plots of what the emulated device did."""
