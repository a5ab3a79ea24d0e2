"""Cluster mode: several relay nodes share one link directory through an MQTT broker.

- :mod:`.records`: the topics and signed records nodes publish (no I/O);
- :mod:`.directory`: :class:`~.directory.MqttDirectory`, the link directory of a node;
- :mod:`.broker`: the connection to the broker (aiomqtt), kept up with backoff;
- :mod:`.peers`: the authenticated node-to-node hop that carries visitors' requests;
- :mod:`.node`: :class:`~.node.ClusterNode`, which wires them together for the relay.

Importing this package imports none of them (a lone relay never loads aiomqtt).
"""
