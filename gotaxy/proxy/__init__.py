# -*- test-case-name: tests.test_proxy -*-
"""
Proxy types: what kinds of tunnel there are, each in a module of its own.

``base`` says what a type provides (``ProxyType``, ``ProxySpec``,
``Exposure``) and what the server gives it (``ExposeContext``, ``Claims``);
``address`` defines ``PublicAddress``, a tunnel's public identity;
``fields`` describes a spec's settings for the faces (``SpecField``);
``registry`` maps names to types, and imports a built-in type's module
the first time that type is looked up.
"""

from gotaxy.proxy import registry
from gotaxy.proxy.address import AddressError, PublicAddress
from gotaxy.proxy.base import Claims, ExposeContext, Exposure, ProxySpec, ProxyType, SpecError, TunnelRefused
from gotaxy.proxy.fields import SpecField
from gotaxy.proxy.registry import describe_types, parse_spec, register, type_of

__all__ = [
    "AddressError", "Claims", "ExposeContext", "Exposure", "ProxySpec", "ProxyType", "PublicAddress",
    "SpecError", "SpecField", "TunnelRefused", "describe_types", "parse_spec", "register", "registry", "type_of",
]
