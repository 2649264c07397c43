"""Tokenizers: BERT WordPiece, XLM-R sentencepiece (BEiT-3 / EVF-SAM), CLIP BPE."""
