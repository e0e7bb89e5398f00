"""DICOM, in one place: the series of image slices that scanners write and the objects we write back.

- :mod:`unet_med.dicom.series`: slice headers (no patient tags), grouping by SeriesInstanceUID,
  ordering along the slice normal, consistency checks, why a file is not an image slice.
- :mod:`unet_med.dicom.reading`: a checked series -> array and RAS affine (SimpleITK).
- :mod:`unet_med.dicom.selection`: series selection rules (``slices>=20``, ``Modality==CT``) and
  the decision per scan.
- :mod:`unet_med.dicom.seg`: DICOM SEG objects for predicted label maps (highdicom).
- :mod:`unet_med.dicom.rtstruct`: RT Structure Sets for predicted label maps, and reading them back.
- :mod:`unet_med.dicom.synthetic`: a volume written as a synthetic CT/MR series (demo, tests).

:mod:`unet_med.data.loading` (NIfTI, DICOM and plain images behind one MONAI reader) and
:mod:`unet_med.data.discovery` (scans under a folder) build on these modules; nothing here imports
from :mod:`unet_med.data`.
"""
