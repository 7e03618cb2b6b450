"""segmentation stage."""
