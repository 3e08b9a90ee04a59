"""The paper's analyses and the retrieval views users look at, each a ``clipvip`` stage.

- ``domain_gap``  (``clipvip domain-gap``): language-domain gap between text corpora, as in the paper: CLIP text
  features of two corpora clustered by K-means (k = 2), NMI between cluster and corpus labels.
- ``data_scale``  (``clipvip data-scale-subset``, ``clipvip data-scale-plot``): nested subsets of the
  pre-training annotations for the data-scale study, and downstream R@1 against data size.
- ``gallery``     (``clipvip gallery``): top-k retrieved clips of a zero-shot and a fine-tuned model for a few
  test captions, as thumbnail strips in one self-contained HTML page.
- ``search``      (``clipvip search``): free-text queries against a frame store through a cached faiss index.
- ``thumbnails``: the thumbnail strips (base64 JPEG data URIs) both HTML pages share.
"""
