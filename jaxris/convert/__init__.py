"""Command-line converters from official PyTorch checkpoints to jaxris weights directories.

  python -m jaxris.convert.sam     --src sam_vit_b_01ec64.pth          --out weights/sam_vit_b
  python -m jaxris.convert.bert    --src HF_BERT_DIR                   --out weights/bert
  python -m jaxris.convert.beit3   --src beit3_large_patch16_224.pth   --out weights/beit3_large
  python -m jaxris.convert.evf_sam --src EVF_SAM_HF_DIR                --out weights/evf_sam
  python -m jaxris.convert.clip    --src ViT-L-14-336px.pt (or HF dir) --out weights/clip_vit_l_14_336

From a checkout, ``python convert/sam.py ...`` runs the same files (``convert`` links here). Each
CLI is thin: parsing, messages and exit codes; the conversions live in jaxris.weights. Checkpoints
are read with jaxris.weights.reader (torch.load(weights_only=True), safetensors) and converted one
tensor at a time, so memory stays near the checkpoint's size.
"""
