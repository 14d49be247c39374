// Module SafeTensors: implementation in progress.
