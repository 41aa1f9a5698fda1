"""Readers that turn real data layouts into validated manifests (images stay where they are).

Each reader returns a `Manifest` built with `build_manifest`, with image paths relative to a root, so every
source flows through the same dataset code: MedMNIST ``.npz`` (exported once as PNG), folders of images with
masks and label tables (ISIC challenge layouts, PH2, your own), and DICOM / NIfTI folders.
"""

from __future__ import annotations

from panderm.data.readers.folders import read_image_folder, read_isic, read_ph2
from panderm.data.readers.medmnist import read_medmnist
from panderm.data.readers.volumes import read_dicom_folder, read_nifti_folder

__all__ = [
    "read_dicom_folder",
    "read_image_folder",
    "read_isic",
    "read_medmnist",
    "read_nifti_folder",
    "read_ph2",
]
