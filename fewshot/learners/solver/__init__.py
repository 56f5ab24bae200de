"""Learners whose per-episode head is the solution of a convex problem on the support features (ridge regression,
multi-class SVM), differentiated through its closed form or its optimality conditions: R2D2, MetaOptNet."""
