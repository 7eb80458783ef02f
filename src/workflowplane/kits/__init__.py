"""Domain-free building blocks: nothing here knows about planes, runs or agents.

Every component may import this layer; it imports no other ``workflowplane`` package.
"""
