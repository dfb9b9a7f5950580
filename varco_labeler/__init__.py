"""varco-labeler: pre-label images in Label Studio with VARCO-VISION."""
