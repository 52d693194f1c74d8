"""Development-only parts: never imported by the collector, featurizer, scorer or trainer.

A local Kafka broker, a local schema registry (real Apicurio Registry), the TF Serving stand-in,
the process harness that runs the services as the demo and the tests do, a Zeek stand-in that
publishes captures as the Zeek package would, and the demo itself. Production images do not
carry this package.
"""
