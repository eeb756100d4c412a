# -*- test-case-name: tests.test_config -*-
"""
The keys frp knows (``frps.toml`` / ``frpc.toml``, frp >= 0.52): a key Gotaxy
does not read but frp does costs a warning, not an error.
"""

from __future__ import annotations






# ---------------------------------------------------------------------------
# The keys frp knows (frps.toml / frpc.toml, frp >= 0.52)

FRPS_KEYS = frozenset({
    "bindAddr", "bindPort", "kcpBindPort", "quicBindPort", "proxyBindAddr",
    "transport.quic.keepalivePeriod", "transport.quic.maxIdleTimeout",
    "transport.quic.maxIncomingStreams", "transport.heartbeatTimeout",
    "transport.maxPoolCount", "transport.tcpMux", "transport.tcpMuxKeepaliveInterval",
    "transport.tcpKeepalive", "transport.tls.force", "transport.tls.certFile",
    "transport.tls.keyFile", "transport.tls.trustedCaFile", "transport.tls.serverName",
    "vhostHTTPPort", "vhostHTTPSPort", "vhostHTTPTimeout", "tcpmuxHTTPConnectPort",
    "tcpmuxPassthrough",
    "webServer.addr", "webServer.port", "webServer.user", "webServer.password",
    "webServer.tls.certFile", "webServer.tls.keyFile", "webServer.tls.trustedCaFile",
    "webServer.tls.serverName", "webServer.assetsDir", "webServer.pprofEnable",
    "log.to", "log.level", "log.maxDays", "log.disablePrintColor",
    "detailedErrorsToClient", "auth.method", "auth.additionalScopes", "auth.token",
    "userConnTimeout", "allowPorts", "maxPortsPerClient", "allowedClientIPs",
    "subDomainHost", "custom404Page", "natholeAnalysisDataReserveHours",
})
# Map-valued settings and arrays of tables: one warning for the whole thing.
FRPS_TABLES = frozenset({"auth.tokenSource", "auth.oidc", "sshTunnelGateway", "httpPlugins"})

FRPC_KEYS = frozenset({
    "clientID", "user", "serverAddr", "serverPort", "natHoleStunServer", "loginFailExit",
    "log.to", "log.level", "log.maxDays", "log.disablePrintColor",
    "auth.method", "auth.additionalScopes", "auth.token",
    "webServer.tls.certFile", "webServer.tls.keyFile", "webServer.tls.trustedCaFile",
    "webServer.tls.serverName", "webServer.assetsDir", "webServer.pprofEnable",
    "transport.dialServerTimeout", "transport.dialServerKeepalive", "transport.poolCount",
    "transport.tcpMux", "transport.tcpMuxKeepaliveInterval", "transport.protocol",
    "transport.wireProtocol", "transport.connectServerLocalIP", "transport.connectServerInterface",
    "transport.proxyURL", "transport.tls.enable", "transport.tls.certFile",
    "transport.tls.keyFile", "transport.tls.trustedCaFile", "transport.tls.serverName",
    "transport.tls.disableCustomTLSFirstByte", "transport.heartbeatInterval",
    "transport.heartbeatTimeout", "dnsServer", "udpPacketSize",
    "virtualNet.address", "store.path",
})
FRPC_TABLES = frozenset({
    "auth.tokenSource", "auth.oidc", "transport.quic", "featureGates", "metadatas",
    "visitors",
})

FRP_PROXY_KEYS = frozenset({
    "name", "type", "localIP", "localPort", "remotePort",
    "transport.bandwidthLimit", "transport.bandwidthLimitMode", "transport.useEncryption",
    "transport.useCompression", "transport.proxyProtocolVersion",
    "loadBalancer.group", "loadBalancer.groupKey",
    "httpUser", "httpPassword", "subdomain", "customDomains", "locations",
    "routeByHTTPUser", "hostHeaderRewrite", "multiplexer", "secretKey", "allowUsers",
    "healthCheck.path", "healthCheck.httpHeaders",
})
FRP_PROXY_TABLES = frozenset({
    "metadatas", "annotations", "plugin",
    "natTraversal",
})

NOT_YET = "is an frp setting that Gotaxy does not support yet"
PANEL_ACCOUNTS = (
    "is not used: the panel has its own accounts (user 'admin', password printed at the "
    "first start; see docs/panel.md)"
)
