"""Submissions: the sample's own format (`format`) and submissions/log.csv (`log`).
"""
