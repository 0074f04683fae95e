"""Writers for the file formats hospitals store images in: PNG, JPEG, DICOM, NIfTI, TIFF.

Every writer is deterministic (no timestamps, UIDs derived from the build seed), so the same
seed gives a byte-identical tree. DICOM files carry realistic headers with a synthetic patient;
those identifiers are recorded in the answer key so that a privacy check can look for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

EXTENSIONS: dict[str, tuple[str, ...]] = {
    "png": (".png",),
    "jpeg": (".jpg", ".jpeg"),
    "dicom": (".dcm",),
    "nifti": (".nii", ".nii.gz"),
    "tiff": (".tif", ".tiff"),
}

#: DICOM modality code per environment (and per distractor modality)
DICOM_MODALITY: dict[str, str] = {
    "dermatoscopy": "XC",
    "ultrasound": "US",
    "fundus": "OP",
    "histopathology": "SM",
    "mri": "MR",
    "xray": "CR",
}


@dataclass(frozen=True)
class DicomStyle:
    """How one site's PACS exports DICOM."""

    photometric: str = "MONOCHROME2"  # or MONOCHROME1 (inverted grey scale)
    compression: str = "none"  # "none", "rle" (RLE Lossless, encapsulated) or "deflate" (zlib dataset)
    bits: int = 8  # 8, or 16 with a rescale intercept
    rescale_intercept: float = 0.0
    explicit_vr: bool = True


@dataclass(frozen=True)
class Patient:
    name: str
    patient_id: str
    birth_date: str
    sex: str


def write_png(path: Path, img: np.ndarray, bits16: bool = False) -> None:
    from PIL import Image

    if bits16 and img.ndim == 2:
        Image.fromarray(img.astype(np.uint16) * 257).save(path, format="PNG")
    else:
        Image.fromarray(img).save(path, format="PNG")


def write_jpeg(path: Path, img: np.ndarray, quality: int = 90) -> None:
    from PIL import Image

    Image.fromarray(img).save(path, format="JPEG", quality=int(quality))


def write_tiff(path: Path, img: np.ndarray, compress: bool = False) -> None:
    import tifffile

    tifffile.imwrite(
        path,
        img,
        photometric="rgb" if img.ndim == 3 else "minisblack",
        compression="zlib" if compress else None,
        metadata=None,
    )


def write_nifti(path: Path, img: np.ndarray, voxel_mm: tuple[float, float, float], rng: np.random.Generator) -> None:
    """A 3-slice volume whose middle axial slice is the labelled image (the stated slice policy).

    The neighbouring slices are the image slightly blurred and noised, as adjacent slices would be.
    """
    import nibabel as nib
    from scipy import ndimage

    if img.ndim != 2:
        raise ValueError("NIfTI volumes are written for grey images only")
    base = img.astype(np.float32)
    neighbours = [np.clip(ndimage.gaussian_filter(base, 1.0) + rng.normal(0, 2, base.shape), 0, 255) for _ in range(2)]
    # nibabel stores (x, y, z); transpose so that a viewer shows the image upright
    volume = np.stack([neighbours[0], base, neighbours[1]], axis=-1).transpose(1, 0, 2).astype(np.uint8)
    affine = np.diag([voxel_mm[0], voxel_mm[1], voxel_mm[2], 1.0])
    image = nib.Nifti1Image(volume, affine)
    image.header.set_xyzt_units("mm")
    nib.save(image, str(path))


def write_dicom(
    path: Path,
    img: np.ndarray,
    *,
    patient: Patient,
    style: DicomStyle,
    modality: str,
    institution: str,
    body_part: str,
    uid_seed: str,
    study_date: str,
    series_description: str,
) -> None:
    """A Secondary Capture DICOM file of ``img`` in the site's export style."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        DeflatedExplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        RLELossless,
        SecondaryCaptureImageStorage,
        generate_uid,
    )

    def uid(kind: str) -> str:
        return generate_uid(entropy_srcs=[uid_seed, kind])

    colour = img.ndim == 3
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = uid("sop")
    ds.StudyInstanceUID = uid("study")
    ds.SeriesInstanceUID = uid("series")
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.InstitutionName = institution
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_date
    ds.StudyTime = "101500"
    ds.AccessionNumber = uid("acc")[-10:]
    ds.Modality = modality
    ds.ConversionType = "WSD"
    ds.BodyPartExamined = body_part.upper()[:16]
    ds.SeriesDescription = series_description[:64]
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Rows, ds.Columns = img.shape[:2]
    ds.PixelRepresentation = 0
    if colour:
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        pixels = np.ascontiguousarray(img.astype(np.uint8))
    else:
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = style.photometric
        values = img.astype(np.int32)
        if style.bits == 16:
            # displayed = stored * slope + intercept, slope 1: a 16-bit export with an offset
            ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
            ds.RescaleSlope, ds.RescaleIntercept = 1, int(style.rescale_intercept)
            stored = values * 16 - int(style.rescale_intercept)
            max_value = 65535
            dtype = np.uint16
        else:
            ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
            stored, max_value, dtype = values, 255, np.uint8
        if style.photometric == "MONOCHROME1":  # brighter stored value = darker display
            stored = max_value - stored
        pixels = np.ascontiguousarray(np.clip(stored, 0, max_value).astype(dtype))
    ds.PixelData = pixels.tobytes()

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian if style.explicit_vr else ImplicitVRLittleEndian
    if style.compression == "deflate":
        meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.file_meta = meta
    if style.compression == "rle":
        ds.compress(RLELossless, pixels, encoding_plugin=_rle_plugin(), generate_instance_uid=False)
    ds.save_as(path, enforce_file_format=True)


def _rle_plugin() -> str:
    """pylibjpeg-rle encodes about 100x faster than pydicom's pure-Python encoder; same bytes out."""
    from pydicom.pixels.encoders import RLELosslessEncoder

    return "pylibjpeg" if "pylibjpeg" in RLELosslessEncoder.available_plugins else "pydicom"
