from twisted.application.service import ServiceMaker

gotaxy_server = ServiceMaker("Gotaxy server", "gotaxy.server.tap", "Gotaxy reverse tunnel server", "gotaxy-server")
