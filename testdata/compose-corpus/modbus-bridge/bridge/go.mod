module example.com/modbus-bridge

go 1.22
