"""The published measurements (README.md here says what each file is and where it comes
from), installed with tilesim as the data package `tilesim.calibration`, so that `tilesim
fidelity` finds them in a wheel as in this checkout."""
