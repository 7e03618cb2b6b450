"""The embedded default dataset: a short-axis cine cardiac MR phantom written in the ACDC layout.

Why it exists: the whole pipeline must run (and be tested) without any real data, and the numbers it
produces there should mean something, so the phantom imitates what a segmentation network sees in ACDC
rather than drawing circles on black:

* anatomy, in millimetres: a truncated-ellipsoid LV (endo- and epicardium as smooth non-circular
  radial functions, papillary muscles and trabeculae as dark structures labelled as cavity), an RV
  crescent hinged on the septum that vanishes before the apex, LV outflow at the base, atria above
  it, pericardial fat, and a torso around it (skin fat, chest-wall muscle, lungs with vessels,
  diaphragm, liver, stomach, bowel, spleen, aorta, spine, sometimes an arm);
* physiology: five ACDC-like groups (NOR, DCM, HCM, MINF, RV) with their volumes, wall thickness
  and ejection fractions; ES keeps myocardial volume (the wall thickens) and shortens from the base;
* acquisition: anti-aliased rendering (area fractions), through-plane partial volume over the slice
  thickness, k-space truncation with a taper (blur + Gibbs ringing), smooth coil bias, bSSFP
  off-resonance banding, complex Gaussian noise (Rician magnitude), integer intensities, and
  zero-filled borders, with the mix set by a named scanner style (`STYLES`).

Everything is drawn from one seed: patient i depends only on (seed, i), so a 6-patient phantom is a
prefix of a 24-patient one, and forcing a style changes the scanner but not the anatomy.

Modules, by concern (each imports only those above it):
  shapes       radial functions, soft edges, blobs, smooth noise (the drawing primitives)
  canvas       one slice being painted, tissue by tissue, in the scene frame (mm)
  anatomy      the heart: groups, LV/MYO/RV geometry at ED and ES, its rendering and labels
  torso        the body around the heart: layout per patient, painted per slice
  acquisition  scanner styles, tissue signal, bias, banding, k-space, noise, integer output
  patient      one patient from one seed: slice stack, ED/ES volumes and masks
  writer       the ACDC layout on disk, `write_phantom`, `PHANTOM_VERSION`
"""
from __future__ import annotations

from data.phantom.acquisition import STYLES, ScannerStyle
from data.phantom.anatomy import GROUPS
from data.phantom.patient import PhantomPatient, generate_patient
from data.phantom.writer import PHANTOM_VERSION, write_patient, write_phantom

__all__ = ["GROUPS", "PHANTOM_VERSION", "STYLES", "PhantomPatient", "ScannerStyle", "generate_patient",
           "write_patient", "write_phantom"]
