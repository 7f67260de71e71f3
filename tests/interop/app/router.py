"""The routes of the interop service: the methods of grpc.testing.TestService that the
interop cases call. ``UnimplementedMethod`` and the other services of test.proto have no
route on purpose: the framework answers them UNIMPLEMENTED."""

from microframe.core.router import rpc

from interop.controller import test_service
from interop.generate.src.proto.grpc.testing import test_pb2

TestService = test_pb2.DESCRIPTOR.services_by_name["TestService"]

routes = [
    rpc(TestService, "EmptyCall", test_service.empty_call),
    rpc(TestService, "UnaryCall", test_service.unary_call),
    rpc(TestService, "StreamingOutputCall", test_service.streaming_output_call),
    rpc(TestService, "StreamingInputCall", test_service.streaming_input_call),
    rpc(TestService, "FullDuplexCall", test_service.full_duplex_call),
    rpc(TestService, "HalfDuplexCall", test_service.half_duplex_call),
]
