"""nmfstudy: NMF against K-means on handwritten digits."""
