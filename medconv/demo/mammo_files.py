"""How the demo writes mammograms: 16-bit PNG with no metadata, or DICOM in the styles scanners use
(BitsStored 12/14/16, MONOCHROME1/2, rescale, VOI window), so readers are tested on every variant."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from medconv.io.atomic import atomic_path, write_bytes

MG_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography X-Ray Image Storage - For Presentation


def png_bytes(array: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def write_png16(path: Path, pixels: np.ndarray, bits: int) -> None:
    """Quantise to `bits` of precision, then scale to the full 16-bit range as the PNG spec asks."""
    levels = 2**bits - 1
    q = np.round(pixels * levels)
    write_bytes(path, png_bytes(np.round(q * (65535 / levels)).astype(np.uint16)))


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    spacing: float,
    lat: str,
    view: str,
    patient_id: str,
    uid_seed: list,
    *,
    bits: int,
    mono1: bool,
    rescale: bool,
    window: bool,
) -> None:
    """Stored values chosen so that modality LUT, VOI window and MONOCHROME1 inversion give `pixels` back."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    maxval = 2**bits - 1
    slope, intercept = (2.0, -1000.0) if rescale else (1.0, 0.0)
    q = 1.0 - pixels if mono1 else pixels
    if window:  # window over part of the modality range; pydicom's linear window inverts exactly
        lo_m, span = intercept, slope * maxval
        w_lo, w_hi = lo_m + 0.05 * span, lo_m + 0.9 * span
        centre, width = round((w_lo + w_hi) / 2), round(w_hi - w_lo)
        modality = centre - 0.5 + (q - 0.5) * (width - 1)
        stored = (modality - intercept) / slope
    else:
        stored = q * maxval
    stored = np.clip(np.round(stored), 0, maxval).astype("<u2")

    study = generate_uid(entropy_srcs=[str(s) for s in uid_seed] + ["study"])
    sop = generate_uid(entropy_srcs=[str(s) for s in uid_seed] + [lat, view, "sop"])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MG_PRESENTATION
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = MG_PRESENTATION
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[str(s) for s in uid_seed] + [lat, view, "series"])
    ds.PatientID = patient_id
    ds.PatientName = f"Demo^{patient_id}"
    ds.StudyDate = "20240101"
    ds.Modality = "MG"
    ds.BodyPartExamined = "BREAST"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageLaterality = lat
    ds.ViewPosition = view
    ds.PixelSpacing = [spacing, spacing]
    ds.ImagerPixelSpacing = [spacing, spacing]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if mono1 else "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    if rescale:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
        ds.RescaleType = "US"
    if window:
        ds.WindowCenter = centre
        ds.WindowWidth = width
        ds.VOILUTFunction = "LINEAR"
    ds.PixelData = stored.tobytes()
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
