"""Text-prompting schemes for SAM, one file each: DIT-SAM (dit_sam.py, dit_encoder.py, dit_crossatt.py), EVF-SAM (evf.py)."""
