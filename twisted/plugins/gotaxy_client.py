from twisted.application.service import ServiceMaker

gotaxy_client = ServiceMaker("Gotaxy client", "gotaxy.client.tap", "Gotaxy reverse tunnel client", "gotaxy-client")
