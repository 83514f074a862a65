"""The gRPC adapter over the engine: servicers, pb <-> domain conversion, error mapping and the
server bootstrap. Protobuf stops here: ``orion_grpc.core`` never sees a generated message.
"""
