"""De-identification by DICOM PS3.15 Annex E, one job per module: profile (Table E.1-1),
pseudonyms (keyed UIDs, IDs, dates), actions (one dataset), checker (residual PHI), gate (which
files are refused), folder (a folder in, a folder out). The public API is engine.data.deidentify.
"""
