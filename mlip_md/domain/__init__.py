"""Applicability-domain monitors: Mahalanobis T^2, kernel distance d_min, convex hull."""
