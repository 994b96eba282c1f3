package main

import (
	"log"
	"os"
	"time"
)

func main() {
	port := os.Getenv("MODBUS_PORT")
	for {
		log.Printf("polling %s", port)
		time.Sleep(5 * time.Second)
	}
}
