"""The conformance suite: one contract, checked the same way for every integration.

A framework integration provides a :class:`Harness` (an app exposing the scenario
endpoints) and subclasses :class:`ConformanceSuite`::

    from portside_testing.conformance import ConformanceSuite

    class TestMyFramework(ConformanceSuite):
        harness = MyHarness()

pytest then runs every scenario on SQLite (file and in-memory) and PostgreSQL, with
async and sync sessions. :class:`ReplicaConformanceSuite` holds the read-replica
scenarios, which need a real streaming replica (a ``streaming_replica`` fixture).
"""

from portside_testing.conformance.harness import Harness, Mode
from portside_testing.conformance.models import Child, Item, metadata
from portside_testing.conformance.replicas import ReplicaConformanceSuite, StreamingReplicaControl
from portside_testing.conformance.suite import ConformanceSuite

__all__ = [
    "Child",
    "ConformanceSuite",
    "Harness",
    "Item",
    "Mode",
    "ReplicaConformanceSuite",
    "StreamingReplicaControl",
    "metadata",
]
