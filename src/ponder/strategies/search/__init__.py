"""The step-search core shared by beam search, lookahead, DVTS and MCTS (the search-against-
verifiers family of Snell et al., 2024 and Beeching et al., "search-and-learn", 2024).

A solution grows one *step* at a time: a step is sampled until the separator ("\\n\\n") and
is final when it holds an answer (a complete \\boxed{}) or the model ended it with EOS. Every
step is a Node of a per-problem Tree. One file per job:

- tree.py: SearchConfig, Node (what every search needs of a step), Tree (one problem's nodes,
  usage and token budget);
- ops.py: the costly operations, batched across problems: expanding nodes, rolling out,
  rating steps with the scorer;
- results.py: candidates, the trace of every node, the Result;
- beams.py: the loop beam search, lookahead and DVTS share.

MCTS keeps its statistics in its own state (mcts.py), not on the nodes.
"""
