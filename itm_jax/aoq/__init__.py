"""AOQ round 2: offline hard negatives (Chen, Deng and Luo, "Adaptive Offline Quintuplet Loss for
Image-Text Matching", ECCV 2020, Sec. 3.2).

Round 1 trains a model with the online loss; its embeddings of the whole training split are
then scored once, offline, and round 2 trains a fresh model whose loss also sees, for every
pair, hard negatives from those scores. The pieces:

- ``kernel``: the exact blocked top-k scoring of every image against every caption
  (``mine_arrays``: each image's hardest captions ``i2t [N, h_t]``, each caption's hardest
  images ``t2i [M, h_i]``; a JAX backend and a faiss cross-check);
- ``job``: ``mine``, the resumable multi-process job writing those lists to files (a killed job
  loses at most one step of blocks);
- ``store``: the files, their manifest with the split's ``split_fingerprint``, and
  ``load_mined``, which refuses lists of another dataset;
- ``sampler``: ``OfflineSampler`` (the four offline items of a pair, drawn as the authors'
  code does) and ``OfflineItems``, the Grain map adding them to the training examples;
- ``scores``: ``offline_scores``, the offline score vectors inside the train step, the inputs of
  ``itm_jax.losses.aoq.aoq_loss``;
- ``extra``: ``from_config``, how the trainer gets all of round 2 from the run config as a
  batch extra, without naming AOQ.

The ``itm-mine`` command embeds the training split with the round-1 model and runs ``job.mine``;
round 2 reads the lists with ``--config.aoq.mining_dir``.
"""
